"""The fraud and threshold rules: the rules file, the rolling statistics, the spike detector."""
