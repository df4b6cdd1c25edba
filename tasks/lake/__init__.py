"""The destination made of files: one store interface, key layout, manifests, commits, whole tables."""
