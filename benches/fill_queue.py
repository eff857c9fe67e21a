# Queues N QoS 1 messages for an offline persistent subscriber, then exits.
import socket, struct, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
def rl(n):
    out = bytearray()
    while True:
        b = n % 128; n //= 128
        out.append(b | (0x80 if n else 0))
        if not n: return bytes(out)
def connect(cid, clean):
    body = b'\x00\x04MQTT\x04' + bytes([0x02 if clean else 0x00]) + b'\x02\x58' + struct.pack('!H', len(cid)) + cid
    return b'\x10' + rl(len(body)) + body
def recv_exact(s, k):
    buf = b''
    while len(buf) < k:
        chunk = s.recv(k - len(buf))
        if not chunk: raise SystemExit('closed')
        buf += chunk
    return buf
s = socket.create_connection(('127.0.0.1', port)); s.sendall(connect(b'offline-sub', False)); recv_exact(s, 4)
sub = b'\x00\x01' + struct.pack('!H', 5) + b'rec/#' + b'\x01'
s.sendall(b'\x82' + rl(len(sub)) + sub); recv_exact(s, 5)
s.sendall(b'\xe0\x00'); s.close()
p = socket.create_connection(('127.0.0.1', port)); p.sendall(connect(b'filler', True)); recv_exact(p, 4)
payload = b'x' * 64
t = time.time(); sent = 0; acked = 0; window = 20000; got = 0
def pub(i):
    pid = i % 65535 + 1
    body = struct.pack('!H', 5) + b'rec/a' + struct.pack('!H', pid) + payload
    return b'\x32' + rl(len(body)) + body
while acked < n:
    chunk = []
    while sent < n and sent - acked < window and len(chunk) < 2000:
        chunk.append(pub(sent)); sent += 1
    if chunk: p.sendall(b''.join(chunk))
    data = p.recv(65536)
    if not data: raise SystemExit('closed')
    got += len(data); acked = got // 4  # PUBACKs are 4 bytes
print(f'queued {n} in {time.time()-t:.1f}s')
