"""The training commands: `skipvit train static`, `train rl` and `train exits`."""
