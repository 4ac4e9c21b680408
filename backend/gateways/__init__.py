"""Outside services whose SDKs block (Alipay, WeChat Pay, JPush, SMS, banks), called one
way (docs/gateways.md): a thread pool of each gateway's own, a timeout per call, typed
errors, retries as deferred jobs with backoff, the exchanges kept where money moves, and
a local fake of each for tests and the demo (``shuiwu fake-gateway KIND``)."""
