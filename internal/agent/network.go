package agent

import (
	"context"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentapi "github.com/husk-runtime/husk/api/agent/v1"
)

// ConfigureNetwork recreates the host namespace's interfaces on the guest's
// virtio-net devices, then its routes.
func (s *Service) ConfigureNetwork(ctx context.Context, req *agentapi.ConfigureNetworkRequest) (*agentapi.Empty, error) {
	for _, iface := range req.GetInterfaces() {
		if err := configureInterface(iface); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "interface %s: %v", iface.GetName(), err)
		}
	}
	for _, r := range req.GetRoutes() {
		if err := addRoute(r); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "route to %q via %q: %v", r.GetDestination(), r.GetGateway(), err)
		}
	}
	return &agentapi.Empty{}, nil
}

func configureInterface(iface *agentapi.NetworkInterface) error {
	mac, err := net.ParseMAC(iface.GetMac())
	if err != nil {
		return err
	}
	device := mac
	if d := iface.GetDeviceMac(); d != "" {
		if device, err = net.ParseMAC(d); err != nil {
			return err
		}
	}
	link, err := linkByMAC(device)
	if err != nil {
		return err
	}
	if device.String() != mac.String() {
		// virtio-net passes the new address to QEMU, whose device then
		// takes frames for it.
		if err := netlink.LinkSetHardwareAddr(link, mac); err != nil {
			return fmt.Errorf("setting the MAC address %s: %w", mac, err)
		}
	}
	if name := iface.GetName(); name != "" && name != link.Attrs().Name {
		if err := netlink.LinkSetDown(link); err != nil {
			return fmt.Errorf("down: %w", err)
		}
		if err := netlink.LinkSetName(link, name); err != nil {
			return fmt.Errorf("renaming %s: %w", link.Attrs().Name, err)
		}
	}
	if mtu := int(iface.GetMtu()); mtu > 0 {
		if err := netlink.LinkSetMTU(link, mtu); err != nil {
			return fmt.Errorf("mtu %d: %w", mtu, err)
		}
	}
	for _, a := range iface.GetAddresses() {
		addr, err := netlink.ParseAddr(a)
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(link, addr); err != nil {
			return fmt.Errorf("address %s: %w", a, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("up: %w", err)
	}
	return nil
}

func linkByMAC(mac net.HardwareAddr) (netlink.Link, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, err
	}
	for _, l := range links {
		if l.Attrs().HardwareAddr.String() == mac.String() {
			return l, nil
		}
	}
	return nil, fmt.Errorf("no device with MAC %s", mac)
}

func addRoute(r *agentapi.NetworkRoute) error {
	link, err := netlink.LinkByName(r.GetDevice())
	if err != nil {
		return fmt.Errorf("device %q: %w", r.GetDevice(), err)
	}
	route := &netlink.Route{LinkIndex: link.Attrs().Index, Scope: netlink.Scope(r.GetScope())}
	if d := r.GetDestination(); d != "" {
		if _, route.Dst, err = net.ParseCIDR(d); err != nil {
			return err
		}
	}
	if g := r.GetGateway(); g != "" {
		if route.Gw = net.ParseIP(g); route.Gw == nil {
			return fmt.Errorf("gateway %q is not an IP address", g)
		}
	}
	return netlink.RouteReplace(route)
}
