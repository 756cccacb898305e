"""Who is calling (principals, API tokens) and what they may do (the authorisation gate)."""
