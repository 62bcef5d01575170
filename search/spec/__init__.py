"""The search spec: its YAML schema, parameter values (fixed, ranges, per-model) and the checks
that need the merge-method registry. Everything here is plain validated data; nothing runs."""
