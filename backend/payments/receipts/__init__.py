"""Receipts (票据打印 / 补打): receipt PDFs on configurable layouts, numbered pre-printed
form stock (票据领用 / 核销), and the e-invoice provider interface (docs/receipts.md)."""
