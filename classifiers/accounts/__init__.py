"""Who a request is and what it may spend: API keys, rate limits, the usage ledger and the gate combining them."""
