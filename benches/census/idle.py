"""Opens N idle MQTT 3.1.1 connections to PORT between two SIGUSR2s to PID
(benches/census/census.sh); prints the process's VmRSS at the end."""
import socket, sys, time, os, signal, subprocess
port=int(sys.argv[1]); n=int(sys.argv[2]); pid=int(sys.argv[3])
def connect_pkt(cid):
    cid=cid.encode()
    var=b'\x00\x04MQTT\x04\x02\x00\x3c'+len(cid).to_bytes(2,'big')+cid
    return bytes([0x10,len(var)])+var
os.kill(pid, signal.SIGUSR2); time.sleep(0.5)
socks=[]
for i in range(n):
    s=socket.create_connection(('127.0.0.1',port)); s.sendall(connect_pkt(f"idle-{i}")); socks.append(s)
for s in socks:
    d=s.recv(4); assert d[:1]==b'\x20', d
time.sleep(1.5)
os.kill(pid, signal.SIGUSR2); time.sleep(0.5)
print(open(f"/proc/{pid}/status").read().split("VmRSS:")[1].split("\n")[0].strip())
