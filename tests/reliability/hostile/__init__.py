"""Hostile input: smuggling and malformed requests, a fuzz target, slowloris."""
