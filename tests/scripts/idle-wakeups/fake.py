#!/usr/bin/env python3
"""N fake agents: Register, heartbeat every INTERVAL s, answer calls with an empty return."""
import socket, struct, sys, time, select, random

def pad(b, n):
    return b + b'\0' * ((-len(b)) % n)

def s_str(b, s):
    b = pad(b, 4); e = s.encode(); return b + struct.pack('<I', len(e)) + e + b'\0'

def s_sig(b, s):
    e = s.encode(); return b + bytes([len(e)]) + e + b'\0'

def msg(mtype, serial, fields, sig='', body=b''):
    # fields: list of (code, typechar, value)
    f = b''
    for code, t, v in fields:
        f = pad(f, 8)
        f += bytes([code]) + s_sig(b'', t)
        if t in 'so': f = s_str(f, v)
        elif t == 'g': f = s_sig(f, v)
        elif t == 'u': f = pad(f, 4) + struct.pack('<I', v)
    if sig:
        f = pad(f, 8); f += bytes([8]) + s_sig(b'', 'g'); f = s_sig(f, sig)
    hdr = b'l' + bytes([mtype, 0, 1]) + struct.pack('<II', len(body), serial) + struct.pack('<I', len(f)) + f
    m = pad(hdr, 8) + body
    return struct.pack('>I', len(m)) + m

def register(name):
    body = s_str(b'', name)
    return msg(1, 1, [(1, 'o', '/org/containers/hirte/internal'), (2, 's', 'org.containers.hirte.internal.Manager'),
                      (3, 's', 'Register'), (6, 's', 'org.containers.hirte.Link')], 's', body)

def heartbeat(serial):
    return msg(4, serial, [(1, 'o', '/org/containers/hirte/internal/agent'), (2, 's', 'org.containers.hirte.internal.Agent'),
                           (3, 's', 'Heartbeat')])

def main():
    port, n, interval = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    conns = []
    for i in range(n):
        s = socket.create_connection(('127.0.0.1', port))
        s.sendall(register('fake-%04d' % i))
        conns.append({'s': s, 'buf': b'', 'serial': 2, 'next': time.time() + random.random() * interval})
        if i % 32 == 31: time.sleep(0.2)
    print('connected', n, flush=True)
    byfd = {c['s'].fileno(): c for c in conns}
    while True:
        now = time.time()
        for c in conns:
            if now >= c['next']:
                c['s'].sendall(heartbeat(c['serial'])); c['serial'] += 1; c['next'] = now + interval
        wait = max(0.0, min(c['next'] for c in conns) - time.time())
        r, _, _ = select.select(list(byfd), [], [], wait)
        for fd in r:
            c = byfd[fd]
            d = c['s'].recv(65536)
            if not d:
                print('closed', fd, flush=True); del byfd[fd]; conns.remove(c); continue
            c['buf'] += d
            while len(c['buf']) >= 4:
                ln = struct.unpack('>I', c['buf'][:4])[0]
                if len(c['buf']) < 4 + ln: break
                m = c['buf'][4:4 + ln]; c['buf'] = c['buf'][4 + ln:]
                if m[1] == 1:  # method call: empty return
                    serial = struct.unpack('<I', m[8:12])[0]
                    c['s'].sendall(msg(2, c['serial'], [(5, 'u', serial), (6, 's', 'org.containers.hirte.Link')]))
                    c['serial'] += 1

main()
