import SaliencyCore
print("saliencyctl: not yet")
