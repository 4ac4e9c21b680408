"""A domain defined under tests/ (docs/domains.md's worked example): household notes
(抄表便签), picked up everywhere from its declaration alone."""
