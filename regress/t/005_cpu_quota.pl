# traffic_control: server_cores = 0 means the CPUs the server may use, and a
# cgroup CPU quota (a container's --cpus, systemd's CPUQuota=) is what it may
# use. The test command prepares a cgroup with a quota of half a core and
# names it in TC_TEST_CPU_CGROUP (skipped without one): after the postmaster
# is moved into it, new sessions size "the full server" as 0.5 CPU-s per
# second, which a server_share refusal's DETAIL shows as the bucket's size
# (burst_limit x cores).
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $cgroup = $ENV{TC_TEST_CPU_CGROUP} // '';
plan skip_all => 'no cgroup with a CPU quota was prepared (TC_TEST_CPU_CGROUP)'
  if $cgroup eq '' || !-w "$cgroup/cgroup.procs";

my $node = PostgreSQL::Test::Cluster->new('quota');
$node->init;
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'traffic_control'
traffic_control.budgets = '[{"name":"tap_share","mode":"enforce","server_share":0.0001,"burst_limit":0.001}]'
traffic_control.rules = '[{"name":"tap_share","budget":"tap_share","match":{"test":"share"}}]'
});
$node->start;

# Two CPU-using statements in one session: the first is charged what it used
# (more than the tiny bucket), so the second is refused with the bucket's size.
my $twice = q{SELECT count(*) FROM generate_series(1, 200000) /*test='share'*/;
SELECT count(*) FROM generate_series(1, 200000) /*test='share'*/;};

my ($ret, $stdout, $stderr) = $node->psql('postgres', $twice);
like($stderr, qr/query blocked by budget "tap_share": server_share exceeded/,
	'outside the cgroup: the second statement is refused');
unlike($stderr, qr/a bucket of 0\.0005 CPU-s/,
	'outside the cgroup: the bucket is not sized for half a core');

my $postmaster_pid = $node->{_pid};
open(my $procs, '>', "$cgroup/cgroup.procs") or die "cannot open $cgroup/cgroup.procs: $!";
print $procs "$postmaster_pid\n";
close($procs) or die "cannot move the postmaster into $cgroup: $!";

# A new session, forked inside the cgroup (the bucket still owes the first
# session's debt, so its first statement may be refused already).
($ret, $stdout, $stderr) = $node->psql('postgres', $twice);
like($stderr, qr/a bucket of 0\.0005 CPU-s/,
	'inside the cgroup (quota 0.5 cores): the bucket is burst_limit x 0.5');

$node->stop;
done_testing();
