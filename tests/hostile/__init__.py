"""The hostile suite: what an attacker or a careless operator sends, and what must still hold."""
