import CZeroMQ

/// Allocator settings for processes that receive large ZeroMQ messages.
///
/// libzmq allocates every received message larger than its internal buffer (a ResNet-50 row is
/// 106 KB) on its I/O thread, and the consumer frees it after use. With glibc's defaults the
/// freed block sits at the top of the heap and, once more than `M_TRIM_THRESHOLD` (128 KiB) is
/// free there, is handed back to the kernel; the next message then faults fresh pages in, which
/// the kernel zeroes first. Measured on the daemon at K = 26,560: `clear_page_erms` 11.7 % and
/// page faults 1 % of its CPU samples, all on the ZeroMQ I/O thread. Keeping freed memory in the
/// process removes both; the cost is that the peak of freed memory (bounded by the receive
/// high-water mark × message size) stays resident until exit.
public enum MessageMemory {
    /// Keeps freed heap memory for reuse instead of returning it to the kernel after every large
    /// message (`mallopt` `M_TRIM_THRESHOLD` 1 GiB, `M_MMAP_THRESHOLD` 32 MiB; glibc only, a no-op
    /// elsewhere). Call once at start, before sockets exist. Returns whether it applied.
    @discardableResult
    public static func keepFreedMemory() -> Bool {
        CZeroMQ_keep_freed_memory(1 << 30, 32 << 20) == 1
    }
}
