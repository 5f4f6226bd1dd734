# Kernel floor of one small loopback TCP send: N connected pairs, time a
# 60-byte send on each accepted socket (nobody waits on the other end).
import socket, time, resource
resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
N = 5000
ls = socket.socket(); ls.bind(("127.0.0.1", 0)); ls.listen(4096)
addr = ls.getsockname()
clients, servers = [], []
for i in range(N):
    c = socket.socket(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.connect(addr); s, _ = ls.accept(); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    clients.append(c); servers.append(s)
msg = b"x" * 60
# Python's own loop cost, to subtract.
t0 = time.perf_counter()
for s in servers: pass
loop = time.perf_counter() - t0
best = []
for r in range(10):
    t0 = time.perf_counter()
    for s in servers: s.send(msg)
    best.append((time.perf_counter() - t0 - loop) / N * 1e6)
    for c in clients: c.recv(4096)
best.sort()
print(f"send of 60 bytes over loopback TCP: median {best[len(best)//2]:.2f} us, min {best[0]:.2f} us per send ({N} sockets)")
