import SaliencyMonitor
print("saliencyd: not yet")
