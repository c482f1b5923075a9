"""The confirmatory study: does Nexus lower held-out loss at matched pretraining loss?"""
