"""Iterative DPO: rounds of generate -> score -> pairs -> train from the previous round's model."""
