"""A local stand-in for Oktopost's social authorization API, with injectable faults; standalone."""
