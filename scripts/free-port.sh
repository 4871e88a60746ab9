# Sourced by the service scripts. free_port prints a loopback port nothing listens on,
# picked at random from 22000-31999: below the kernel's ephemeral range, so no outgoing
# connection takes it as its local port before the service binds it (or binds it again
# after a test restarts the service).
free_port() {
  python3 - <<'PY'
import random, socket
for _ in range(10000):
    port = random.randrange(22000, 32000)
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        print(port)
        break
else:
    raise SystemExit("no free port in 22000-31999")
PY
}
