"""Behaviour suites that every implementation of an interface must pass; test modules subclass them."""
