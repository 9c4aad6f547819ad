#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft, broker+controller) from Maven Central jars.
#   kafka.sh fetch                              download jars into .kafka/lib (once)
#   kafka.sh up [--data-dir D] [--run-dir R] [--secure C]
#                                               start (or reuse) a broker; prints bootstrap last.
#                                               --secure C adds a SASL_SSL (SCRAM) listener:
#                                               C/server.pem (PKCS#8 key + certificate chain)
#                                               and C/scram.users ("user password" lines, read
#                                               when the data dir is formatted); its address
#                                               goes to R/secure_bootstrap; lines of an
#                                               optional C/broker.properties are appended
#                                               to the broker's config (e.g. an authorizer)
#   kafka.sh down [--run-dir R]                 stop the broker recorded in R
#   kafka.sh status [--run-dir R]               exit 0 if running, 3 if not
# With TRENDSTREAM_KAFKA_BOOTSTRAP set, up only checks that cluster and down does nothing.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
LIB="$ROOT/.kafka/lib"
DATA="$ROOT/.kafka/data"
RUN="$ROOT/.kafka/run"
if [[ -z ${PYTHON:-} ]]; then
  PYTHON="$ROOT/.venv/bin/python"
  [[ -x $PYTHON ]] || PYTHON=python3
fi
EXTERNAL="${TRENDSTREAM_KAFKA_BOOTSTRAP:-}"
SECURE=""

say() { echo "kafka.sh: $*" >&2; }
die() { say "$*"; exit 1; }

fetch() {
  mkdir -p "$ROOT/.kafka"
  # flock: parallel test workers may all call up on a cold cache.
  (
    flock 9
    local want; want="$(sha256sum "$HERE/pom.xml" | cut -d' ' -f1)"
    [[ -f $LIB/.pom.sha256 && "$(cat "$LIB/.pom.sha256")" == "$want" ]] && exit 0
    say "downloading Kafka jars from Maven Central into $LIB"
    rm -rf "$LIB.tmp"
    local out # Debian's mvn -q still prints colour codes: show its output only on failure.
    out="$(mvn -q -B -f "$HERE/pom.xml" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$LIB.tmp" 2>&1)" || { echo "$out" >&2; exit 1; }
    rm -rf "$LIB" && mv "$LIB.tmp" "$LIB"
    echo "$want" >"$LIB/.pom.sha256"
  ) 9>"$ROOT/.kafka/fetch.lock"
}

java_run() { # main-class args...
  java -Dlog4j2.configurationFile="$HERE/log4j2.properties" -Dkafka.logs.dir="$RUN" \
    -cp "$LIB/*" "$@"
}

# True if $1 is the java kafka.Kafka process started for this run dir (PIDs get reused).
is_our_broker() {
  local cmd
  cmd="$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null)" || return 1
  [[ $cmd == *java\ * && $cmd == *" kafka.Kafka $RUN/server.properties "* ]]
}

running_pid() {
  local pid
  pid="$(cat "$RUN/kafka.pid" 2>/dev/null)" || return 1
  is_our_broker "$pid" && echo "$pid"
}

write_config() { # port cport [sport]
  local listeners="PLAINTEXT://127.0.0.1:$1,CONTROLLER://127.0.0.1:$2"
  local advertised="PLAINTEXT://127.0.0.1:$1" map="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
  if [[ -n $SECURE ]]; then
    listeners+=",SASL_SSL://127.0.0.1:$3"
    advertised+=",SASL_SSL://127.0.0.1:$3"
    map+=",SASL_SSL:SASL_SSL"
  fi
  cat >"$RUN/server.properties" <<CFG
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$2
listeners=$listeners
advertised.listeners=$advertised
listener.security.protocol.map=$map
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$DATA/logs
num.partitions=6
auto.create.topics.enable=false
log.retention.ms=-1
group.initial.rebalance.delay.ms=0
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
offsets.topic.num.partitions=6
transaction.state.log.num.partitions=6
CFG
  if [[ -n $SECURE ]]; then
    cat >>"$RUN/server.properties" <<CFG
sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.location=$SECURE/server.pem
CFG
    if [[ -f $SECURE/broker.properties ]]; then cat "$SECURE/broker.properties" >>"$RUN/server.properties"; fi
  fi
}

scram_args() { # --add-scram arguments for StorageTool format, from $SECURE/scram.users
  local user password
  while read -r user password; do
    [[ -n $user ]] || continue
    printf -- '--add-scram\0SCRAM-SHA-512=[name=%s,password=%s]\0' "$user" "$password"
    printf -- '--add-scram\0SCRAM-SHA-256=[name=%s,password=%s]\0' "$user" "$password"
  done <"$SECURE/scram.users"
}

cmd_up() {
  if [[ -n $EXTERNAL ]]; then
    "$PYTHON" "$HERE/wait_ready.py" "$EXTERNAL" --timeout 60
    echo "$EXTERNAL"
    return
  fi
  fetch
  mkdir -p "$DATA" "$RUN"
  local pid port cport
  if pid="$(running_pid)"; then
    say "already running (pid $pid)"
    "$PYTHON" "$HERE/wait_ready.py" "$(cat "$RUN/bootstrap")" --timeout 60 --pid "$pid"
    cat "$RUN/bootstrap"
    return
  fi
  # Kafka 4.1 takes its own log-dir lock only after KRaft has already rewritten
  # quorum-state, so a second broker on this data dir must be refused here. fd 8 is
  # inherited by the broker, which holds the lock for as long as it runs.
  exec 8>"$DATA/broker.lock"
  flock -n 8 || die "data dir $DATA is in use by another broker (see its run dir)"
  # A restart must come back on the same ports: clients and the KRaft quorum remember them.
  if [[ -f $DATA/logs/meta.properties && -f $DATA/ports ]]; then
    read -r port cport sport <"$DATA/ports"
  else
    read -r port cport sport < <("$PYTHON" -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
    echo "$port $cport $sport" >"$DATA/ports"
  fi
  write_config "$port" "$cport" "$sport"
  if [[ ! -f $DATA/logs/meta.properties ]]; then
    local extra=()
    [[ -n $SECURE ]] && mapfile -d '' extra < <(scram_args)
    java_run kafka.tools.StorageTool format -c "$RUN/server.properties" \
      -t "$(java_run kafka.tools.StorageTool random-uuid)" "${extra[@]}" >&2
  fi
  rm -f "$RUN/bootstrap"
  # setsid: the broker lives until `down`, not until the caller's terminal or process group dies.
  setsid java -Xms512m -Xmx512m -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent \
    -XX:MaxInlineLevel=15 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$HERE/log4j2.properties" -Dkafka.logs.dir="$RUN" \
    -cp "$LIB/*" kafka.Kafka "$RUN/server.properties" \
    </dev/null >"$RUN/kafka.out" 2>&1 &
  pid=$!
  echo "$pid" >"$RUN/kafka.pid"
  if ! "$PYTHON" "$HERE/wait_ready.py" "127.0.0.1:$port" --timeout 60 --pid "$pid" \
    --log "$RUN/kafka.out" --log "$RUN/server.log"; then
    cmd_down
    die "broker did not become ready (logs in $RUN)"
  fi
  if [[ -n $SECURE ]]; then echo "127.0.0.1:$sport" >"$RUN/secure_bootstrap"; fi
  echo "127.0.0.1:$port" | tee "$RUN/bootstrap"
}

cmd_down() {
  [[ -n $EXTERNAL ]] && { say "external cluster $EXTERNAL: nothing to stop"; return; }
  local pid
  if ! pid="$(running_pid)"; then
    say "not running"
    rm -f "$RUN/kafka.pid"
    return
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 300); do
    is_our_broker "$pid" || break
    sleep 0.1
  done
  if is_our_broker "$pid"; then
    say "no clean shutdown after 30s, killing $pid"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$RUN/kafka.pid"
  say "stopped (pid $pid)"
}

cmd_status() {
  if [[ -n $EXTERNAL ]]; then
    echo "external cluster $EXTERNAL"
  elif pid="$(running_pid)"; then
    echo "running pid=$pid bootstrap=$(cat "$RUN/bootstrap" 2>/dev/null || echo '(starting)')"
  else
    echo "not running"
    return 3
  fi
}

sub="${1:-}"
shift || true
while (($#)); do
  case $1 in
    --data-dir) DATA="$(realpath -m "$2")"; shift 2 ;;
    --run-dir) RUN="$(realpath -m "$2")"; shift 2 ;;
    --secure) SECURE="$(realpath -m "$2")"; shift 2 ;;
    *) die "unknown argument: $1" ;;
  esac
done
case $sub in
  fetch) fetch ;;
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) sed -n '2,15p' "$0" >&2; exit 2 ;;
esac
