"""Off-policy evaluation of explore policies from logged impressions (IPS, SNIPS, doubly robust)."""
