"""Backends: each is one table from op name to a translation, plus one loop over the IR."""
