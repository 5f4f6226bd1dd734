# Kernel floor of one small loopback TCP send: N connected pairs, time a
# 60-byte send on each accepted socket.
#
#   python3 scripts/sendfloor.py          nobody waits on the other ends
#   python3 scripts/sendfloor.py --live   a second process waits on them in
#                                         epoll and reads every message, as a
#                                         WebSocket client does: each send
#                                         then also wakes a reader and the
#                                         reader's ACKs come back
import os, resource, select, socket, sys, time

live = "--live" in sys.argv
resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
N = 5000
ROUNDS = 10
ls = socket.socket(); ls.bind(("127.0.0.1", 0)); ls.listen(4096)
addr = ls.getsockname()
clients, servers = [], []
for i in range(N):
    c = socket.socket(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.connect(addr); s, _ = ls.accept(); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    clients.append(c); servers.append(s)
msg = b"x" * 60

reader = None
if live:
    go_r, go_w = os.pipe()
    reader = os.fork()
    if reader == 0:
        # The reader: every client end in one epoll, read as messages come.
        ep = select.epoll()
        for c in clients:
            c.setblocking(False)
            ep.register(c.fileno(), select.EPOLLIN)
        by_fd = {c.fileno(): c for c in clients}
        got, want = 0, N * ROUNDS * 60
        os.write(go_w, b"r")
        while got < want:
            for fd, _ in ep.poll():
                try:
                    got += len(by_fd[fd].recv(65536))
                except BlockingIOError:
                    pass
        os._exit(0)
    os.read(go_r, 1)

# Python's own loop cost, to subtract.
t0 = time.perf_counter()
for s in servers: pass
loop = time.perf_counter() - t0
best = []
for r in range(ROUNDS):
    t0 = time.perf_counter()
    for s in servers: s.send(msg)
    best.append((time.perf_counter() - t0 - loop) / N * 1e6)
    if live:
        time.sleep(0.2)  # the reader drains; the next round starts idle
    else:
        for c in clients: c.recv(4096)
if reader:
    os.waitpid(reader, 0)
best.sort()
kind = "to sockets a reader waits on" if live else "(nobody reading)"
print(f"send of 60 bytes over loopback TCP {kind}: median {best[len(best)//2]:.2f} us, min {best[0]:.2f} us per send ({N} sockets)")
