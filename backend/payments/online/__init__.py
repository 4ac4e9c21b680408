"""Online payments (在线支付, issue 18): Alipay and WeChat Pay orders of every scene, their
verified exactly-once notifications, active query and close, refunds through the original
channel, daily reconciliation, static QR stickers and pending card / meter writes
(docs/payments.md, "Online payments").

- ``models``: the tables; ``merchants``: the merchants file (``SHUIWU_PAYMENTS_CONFIG``);
  ``gateway``: the one interface over the protocols, implemented by ``alipay``,
  ``wechat_v2`` and ``wechat_v3``; ``fakes``: the local gateways (``shuiwu fake-gateway``).
"""
