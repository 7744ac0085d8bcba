"""Stages 1-3: prompt library, captioning, generation, selection and filtering."""
