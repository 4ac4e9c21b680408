"""Residents' SMS (docs/sms.md): the senders (:mod:`.senders`), the ``sms`` gateway's
settings (:mod:`.settings`), each vendor's signed API (:mod:`.aliyun`, :mod:`.tencent`),
their refusals as typed errors (:mod:`.refusals`) and the local fake (:mod:`.fake`).
Kept free of imports, so the auth domain's declaration can name the settings cheaply."""
