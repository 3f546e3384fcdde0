"""The threads layer: the reply consumer thread and the agent workers."""
