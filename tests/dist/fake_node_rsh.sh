#!/bin/sh
# Open MPI's rsh agent for several "nodes" on one machine: each fake node
# runs in its own UTS namespace with its own hostname, so Open MPI treats
# the nodes as distinct (no shared memory between them: TCP over loopback).
host="$1"; shift
exec unshare --uts /bin/sh -c "hostname $host; $*"
