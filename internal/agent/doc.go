// Package agent is husk-agent, PID 1 of every husk guest: it prepares the
// guest (root filesystem, pseudo filesystems, the shared 9p directory), opens
// the agent port and serves the agent API, creating containers with runc's
// libcontainer, carrying their stdio on yamux streams and reporting exits.
package agent
