package agent

import (
	"io"
	"net"
	"testing"
	"time"

	agentapi "github.com/husk-runtime/husk/api/agent/v1"
	"github.com/husk-runtime/husk/internal/channel"
)

// Garbage, truncated and oversized headers on stdio streams are dropped one
// stream at a time; the agent keeps accepting, and a good stream still
// reaches the request waiting for it.
func TestAcceptStreamsSurvivesGarbage(t *testing.T) {
	hostEnd, guestEnd := net.Pipe()
	guest, err := channel.Guest(guestEnd)
	if err != nil {
		t.Fatal(err)
	}
	defer guest.Close()
	host, err := channel.Host(hostEnd)
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	table := newStreamTable()
	go acceptStreams(guest, table)

	for _, junk := range [][]byte{
		{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, // oversized length
		{20, 1, 2, 3},                 // truncated, then closed
		{4, 0xde, 0xad, 0xbe, 0xef},   // not protobuf
		append([]byte{2}, 0x18, 0x01), // no container id
	} {
		s, err := host.Open()
		if err != nil {
			t.Fatal(err)
		}
		_, _ = s.Write(junk)
		_ = s.Close()
		// The agent closes a bad stream: reading ends.
		_ = s.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadAll(s); err != nil {
			t.Fatalf("bad stream %x was not closed by the agent: %v", junk, err)
		}
	}

	s, err := host.Open()
	if err != nil {
		t.Fatal(err)
	}
	if err := channel.WriteHeader(s, &agentapi.StreamHeader{ContainerId: "c", Kind: agentapi.StreamHeader_STDOUT}); err != nil {
		t.Fatal(err)
	}
	got, err := table.take(streamKey{"c", "", agentapi.StreamHeader_STDOUT}, 5*time.Second)
	if err != nil {
		t.Fatalf("good stream after garbage: %v", err)
	}
	got.Close()
}

func TestStreamTableDropClosesLeftovers(t *testing.T) {
	table := newStreamTable()
	a, b := net.Pipe()
	defer b.Close()
	table.put(streamKey{"c", "e", agentapi.StreamHeader_STDIN}, a)
	table.drop("c", "e")
	_ = b.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := b.Read(make([]byte, 1)); err == nil {
		t.Fatal("dropped stream still open")
	}
	if _, err := table.take(streamKey{"c", "e", agentapi.StreamHeader_STDIN}, 10*time.Millisecond); err == nil {
		t.Fatal("dropped stream still taken")
	}
}
