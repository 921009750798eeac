"""The explore stage after rank: policies that pick the shown slate and the propensity of each slot."""
