"""Diagnosis of training problems: per-layer monitor, checks, the doctor and the training watch."""
