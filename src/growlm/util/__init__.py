"""Utilities at the bottom of growlm: durable file writing, typed field checks, the allocator tuning."""
