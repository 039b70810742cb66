"""A real OpenLDAP directory for the sign-in tests: Debian's `slapd` (apt `slapd ldap-utils`,
installed by scripts/test) started as the current user on a loopback port, with a generated
slapd.conf (mdb backend, memberof overlay so users carry `memberOf` as in Active Directory)
in a temporary directory. The system's own slapd is never touched.

As a script (for the browser test): `python3 ldapdir.py DIR [RECHECK_SECONDS]` starts it,
prints one JSON line (url, the `[auth.ldap]` config, users, and the LDIF that disables a user)
and runs until stdin closes."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

SUFFIX = "dc=corp,dc=example"
ROOT_DN = f"cn=root,{SUFFIX}"
ROOT_PW = "root-secret"
SERVICE_DN = f"cn=edgeseek,ou=services,{SUFFIX}"
SERVICE_PW = "service-secret"
PEOPLE = f"ou=people,{SUFFIX}"
GROUPS = f"ou=groups,{SUFFIX}"
FINANCE = f"cn=finance,{GROUPS}"
ADMINS = f"cn=it-admins,{GROUPS}"
VISITORS = f"cn=visitors,{GROUPS}"

# name -> (password, groups)
USERS = {
    "alice": ("alice-pw", [FINANCE]),
    "bob": ("bob-pw", [ADMINS]),
    "carol": ("carol-pw", [VISITORS]),
    "dave": ("dave-pw", [FINANCE]),
    "erin": ("erin-pw", [FINANCE]),
}

# Disabled accounts carry employeeType: disabled; the filter leaves them out (as the AD
# example's userAccountControl bit does).
USER_FILTER = "(&(uid={user})(!(employeeType=disabled)))"

CONF = """\
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
{tls}pidfile {dir}/slapd.pid
argsfile {dir}/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload memberof
database mdb
maxsize 10485760
suffix "{suffix}"
rootdn "{root_dn}"
rootpw {root_pw}
directory {dir}/db
overlay memberof
access to attrs=userPassword by anonymous auth by self write by * none
access to * by users read by * none
"""


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ldif():
    out = [
        f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: corp\no: Corp\n",
        f"dn: ou=services,{SUFFIX}\nobjectClass: organizationalUnit\nou: services\n",
        f"dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people\n",
        f"dn: {GROUPS}\nobjectClass: organizationalUnit\nou: groups\n",
        f"dn: {SERVICE_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n"
        f"cn: edgeseek\nuserPassword: {SERVICE_PW}\n",
    ]
    for name, (pw, _) in USERS.items():
        out.append(f"dn: uid={name},{PEOPLE}\nobjectClass: inetOrgPerson\nuid: {name}\n"
                   f"cn: {name.title()}\nsn: {name.title()}\nuserPassword: {pw}\n")
    for group in (FINANCE, ADMINS, VISITORS):
        members = [f"uid={n},{PEOPLE}" for n, (_, gs) in USERS.items() if group in gs]
        cn = group.split(",")[0].split("=")[1]
        out.append(f"dn: {group}\nobjectClass: groupOfNames\ncn: {cn}\n"
                   + "".join(f"member: {m}\n" for m in members))
    return "\n".join(out)


TLS_CONF = """\
TLSCACertificateFile {dir}/ca.pem
TLSCertificateFile {dir}/server.pem
TLSCertificateKeyFile {dir}/server.key
"""


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(d: Path, name="Test Directory CA"):
    """A CA (`ca.pem`) and a server certificate for 127.0.0.1 signed by it (`server.pem`,
    `server.key`), in `d`."""
    d.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1",
             cwd=d)
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                               "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf", cwd=d)


def disable_ldif(user: str) -> str:
    return (f"dn: uid={user},{PEOPLE}\nchangetype: modify\nadd: employeeType\n"
            "employeeType: disabled\n")


class Slapd:
    def __init__(self, workdir: Path, tls=False):
        """`tls`: also serve ldaps:// (`self.ldaps_url`) and StartTLS on ldap://, with a
        certificate from a CA of its own (`self.ca`)."""
        if not shutil.which("slapd") and not Path("/usr/sbin/slapd").exists():
            raise RuntimeError("slapd is not installed (apt-get install slapd ldap-utils)")
        self.dir = Path(workdir)
        (self.dir / "db").mkdir(parents=True, exist_ok=True)
        conf = self.dir / "slapd.conf"
        tls_conf = ""
        if tls:
            make_pki(self.dir)
            self.ca = self.dir / "ca.pem"
            tls_conf = TLS_CONF.format(dir=self.dir)
        conf.write_text(CONF.format(dir=self.dir, suffix=SUFFIX, root_dn=ROOT_DN, root_pw=ROOT_PW,
                                    tls=tls_conf))
        self.port = _free_port()
        self.url = f"ldap://127.0.0.1:{self.port}"
        listen = self.url + "/"
        if tls:
            self.ldaps_url = f"ldaps://127.0.0.1:{_free_port()}"
            listen += " " + self.ldaps_url + "/"
        self.log = open(self.dir / "slapd.log", "w")
        slapd = shutil.which("slapd") or "/usr/sbin/slapd"
        # -d keeps it in the foreground (so it is our child and dies with the test).
        self.proc = subprocess.Popen([slapd, "-f", str(conf), "-h", listen, "-d", "256"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 20
        while True:
            p = subprocess.run(["ldapwhoami", "-x", "-H", self.url, "-D", ROOT_DN, "-w", ROOT_PW],
                               capture_output=True, text=True, timeout=10)
            if p.returncode == 0:
                break
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError(f"slapd did not start: {(self.dir / 'slapd.log').read_text()}")
            time.sleep(0.1)
        self.modify(_ldif(), add=True)

    def modify(self, ldif: str, add=False):
        tool = "ldapadd" if add else "ldapmodify"
        p = subprocess.run([tool, "-x", "-H", self.url, "-D", ROOT_DN, "-w", ROOT_PW],
                           input=ldif, capture_output=True, text=True, timeout=30)
        if p.returncode != 0:
            raise RuntimeError(f"{tool} failed: {p.stderr}")

    def disable(self, user: str):
        self.modify(disable_ldif(user))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def config(self, password_file: Path, recheck_seconds=300, extra="", url=None) -> str:
        """`[auth.ldap]` of edgeseek.toml for this directory (`url`: another of its URLs)."""
        password_file.write_text(SERVICE_PW + "\n")
        os.chmod(password_file, 0o600)
        return f"""
[auth.ldap]
url = "{url or self.url}"
bind_dn = "{SERVICE_DN}"
bind_password_file = "{password_file}"
user_base = "{PEOPLE}"
user_filter = "{USER_FILTER}"
recheck_seconds = {recheck_seconds}
{extra}
[auth.ldap.groups."{FINANCE}"]
scopes = ["chat", "kb:read:finance"]
usage_group = "finance"

[auth.ldap.groups."{ADMINS}"]
scopes = ["admin"]
"""


if __name__ == "__main__":
    work = Path(sys.argv[1])
    recheck = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    d = Slapd(work)
    try:
        print(json.dumps({
            "url": d.url, "config": d.config(work / "bind.secret", recheck_seconds=recheck),
            "users": {n: pw for n, (pw, _) in USERS.items()},
            # ldapmodify's arguments and input that disable a user (NAME in the LDIF).
            "modify": ["-x", "-H", d.url, "-D", ROOT_DN, "-w", ROOT_PW],
            "disable": disable_ldif("NAME"),
        }), flush=True)
        sys.stdin.read()
    finally:
        d.stop()
