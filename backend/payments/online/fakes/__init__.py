"""The local payment gateways (``shuiwu fake-gateway alipay|wechat``): real HTTP servers on
the gateways' base (``backend.gateways.http``) that verify and sign exactly as Alipay and
WeChat Pay do, hold orders in memory, serve a cashier page, and send (replay, tamper
with, delay, drop) signed notifications to the orders' notify URLs."""
