"""Pure core: definitions, replay, decisions, codec. No I/O, no clock, no randomness."""
