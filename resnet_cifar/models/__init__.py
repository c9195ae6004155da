"""Models: the hand-written ResNet family and pretrained-weight loading."""
