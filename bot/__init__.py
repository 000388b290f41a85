"""Katılım: settings, CLI, wiring, scheduler and delivery."""
