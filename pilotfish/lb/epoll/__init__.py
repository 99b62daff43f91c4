"""The epoll engine: raw non-blocking sockets on one edge-triggered epoll set (Linux)."""
