// EVTOnline: streaming extreme-value statistics for parameter saliency.
// No sockets, no files: every claim here is testable in microseconds.
