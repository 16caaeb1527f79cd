"""A tiny TCP challenge: answer an addition, get the instance's flag.

Usage:
    python3 server.py serve STATE_DIR   listen on 127.0.0.1, any free port,
                                        and write the port to STATE_DIR/port
    python3 server.py flag              print this instance's flag

Both read CM_IDENTITY, the instance identity set by chall-manager.
"""

import hashlib
import os
import random
import socketserver
import sys

# Changing the salt changes every instance's flag.
FLAG_SALT = "exec-tcp-addition"

# Seconds a player has to answer before the connection is closed.
ANSWER_TIMEOUT = 30


def instance_flag():
    """Derives the flag from the instance identity, so each instance differs."""
    identity = os.environ["CM_IDENTITY"]
    digest = hashlib.sha256((identity + FLAG_SALT).encode()).hexdigest()
    return "CTF{" + digest[:16] + "}"


class AdditionHandler(socketserver.StreamRequestHandler):
    def handle(self):
        self.request.settimeout(ANSWER_TIMEOUT)
        a, b = random.randint(1, 1000), random.randint(1, 1000)
        self.wfile.write(f"What is {a} + {b}?\n".encode())
        try:
            answer = self.rfile.readline().decode().strip()
        except (OSError, UnicodeDecodeError):
            return
        if answer == str(a + b):
            self.wfile.write((self.server.flag + "\n").encode())
        else:
            self.wfile.write(b"Wrong answer.\n")


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True


def serve(state_dir):
    server = Server(("127.0.0.1", 0), AdditionHandler)
    # up.sh writes the instance's flag there; derive one when it did not.
    flag_file = os.path.join(state_dir, "flag")
    if os.path.exists(flag_file):
        with open(flag_file) as file:
            server.flag = file.read().strip()
    else:
        server.flag = instance_flag()
    port = server.server_address[1]

    # Write then rename, so that up.sh never reads a partial port number.
    temporary = os.path.join(state_dir, "port.tmp")
    with open(temporary, "w") as file:
        file.write(f"{port}\n")
    os.replace(temporary, os.path.join(state_dir, "port"))

    print(f"listening on 127.0.0.1:{port}", flush=True)
    server.serve_forever()


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "serve":
        serve(sys.argv[2])
    elif len(sys.argv) == 2 and sys.argv[1] == "flag":
        print(instance_flag())
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
