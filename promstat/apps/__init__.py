"""Applications built on the core: the GraphQL service (``promstat serve``) and the demo."""
