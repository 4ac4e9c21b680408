"""Files: the one storage of photos, exports and receipts (DESIGN.md, "Files"), a shared layer."""
