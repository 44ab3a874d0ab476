// SaliencyMonitor: the daemon.
import SaliencyCore
import EVTOnline
import SaliencyStream
