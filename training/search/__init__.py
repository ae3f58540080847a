"""The post-training searches that add points to a bundle's front: `skipvit search nsga`, `search dyce`
and `search lac`."""
