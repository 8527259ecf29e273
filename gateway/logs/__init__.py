"""Function logs: lines pulled from runtimes, platform events, stored and followed."""
