# traffic_control: work the server starts by itself is never admitted as a
# client statement.
#
# - autovacuum: ANALYZE of an expression index runs the index's function,
#   whose query carries a tag a budget sheds; the analyze completes.
# - logical replication: on the publisher, every SELECT and utility
#   statement is shed, yet the subscriber's table synchronisation (a
#   walsender running COPY and catalog queries) completes; on the
#   subscriber, an ENABLE ALWAYS trigger runs a shed query for every
#   replicated row, yet the apply worker applies them.
#
# Every wait is bounded (60 s).
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

my $wait_seconds = 60;
my $shed_budget = q{[{"name":"bg_shed","mode":"enforce","max_concurrent":0}]};
my $refusal = qr/query blocked by budget "bg_shed"/;

# Polls $sql on $node until it prints $expected; false after $wait_seconds.
sub wait_for_result
{
	my ($node, $sql, $expected) = @_;
	my $deadline = time() + $wait_seconds;
	my $last = '';
	while (time() < $deadline)
	{
		my ($ret, $stdout, $stderr) =
		  $node->psql('postgres', $sql, timeout => $wait_seconds);
		$last = "ret=$ret stdout=$stdout stderr=$stderr";
		return 1 if $ret == 0 && $stdout eq $expected;
		usleep(200_000);
	}
	diag "timed out waiting for <$sql> to return <$expected>: $last";
	return 0;
}

# A function whose query is tagged route='bg' (shed): EXECUTE keeps the tag.
my $tagged_function = q{
CREATE FUNCTION bg_tagged(n int) RETURNS int IMMUTABLE LANGUAGE plpgsql AS $$
DECLARE r int;
BEGIN
  EXECUTE 'SELECT $1 /*route=''bg''*/' INTO r USING n;
  RETURN r;
END $$;
};

# ---- autovacuum ---------------------------------------------------------------
my $node = PostgreSQL::Test::Cluster->new('autovacuum');
$node->init;
$node->append_conf(
	'postgresql.conf', qq{
shared_preload_libraries = 'traffic_control'
autovacuum_naptime = 1
traffic_control.budgets = '$shed_budget'
traffic_control.rules = '[{"name":"bg_shed","budget":"bg_shed","match":{"route":"bg"}}]'
});
$node->start;
$node->safe_psql('postgres', $tagged_function . q{
CREATE TABLE bg_items (a int);
CREATE INDEX bg_items_expr ON bg_items (bg_tagged(a));
INSERT INTO bg_items SELECT generate_series(1, 2000);
});
ok( wait_for_result(
		$node,
		q{SELECT last_autoanalyze IS NOT NULL FROM pg_stat_user_tables WHERE relname = 'bg_items'},
		't'),
	'autovacuum analyzes a table whose expression index runs a shed query');
unlike(slurp_file($node->logfile), $refusal, 'autovacuum: nothing was refused');
$node->stop;

# ---- logical replication --------------------------------------------------------
my $publisher = PostgreSQL::Test::Cluster->new('publisher');
$publisher->init(allows_streaming => 'logical');
$publisher->append_conf('postgresql.conf',
	qq{shared_preload_libraries = 'traffic_control'});
$publisher->start;
$publisher->safe_psql('postgres', q{
CREATE TABLE bg_rows (id int PRIMARY KEY);
INSERT INTO bg_rows SELECT generate_series(1, 100);
CREATE PUBLICATION bg_pub FOR TABLE bg_rows;
});
# Shed every SELECT and utility statement on the publisher from now on.
$publisher->append_conf(
	'postgresql.conf', qq{
traffic_control.budgets = '$shed_budget'
traffic_control.rules = '[{"name":"bg_shed","budget":"bg_shed","match":{"command":["select","utility"]}}]'
});
$publisher->reload;

my $subscriber = PostgreSQL::Test::Cluster->new('subscriber');
$subscriber->init;
$subscriber->append_conf(
	'postgresql.conf', qq{
shared_preload_libraries = 'traffic_control'
traffic_control.budgets = '$shed_budget'
traffic_control.rules = '[{"name":"bg_shed","budget":"bg_shed","match":{"route":"bg"}}]'
});
$subscriber->start;
$subscriber->safe_psql('postgres', $tagged_function . q{
CREATE TABLE bg_rows (id int PRIMARY KEY, seen int);
-- The apply worker runs with an empty search_path.
CREATE FUNCTION bg_mark() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.seen := public.bg_tagged(NEW.id);
  RETURN NEW;
END $$;
CREATE TRIGGER bg_mark BEFORE INSERT ON bg_rows FOR EACH ROW EXECUTE FUNCTION bg_mark();
ALTER TABLE bg_rows ENABLE ALWAYS TRIGGER bg_mark;
});
my $publisher_connection = $publisher->connstr . ' dbname=postgres';
$subscriber->safe_psql('postgres',
	"CREATE SUBSCRIPTION bg_sub CONNECTION '$publisher_connection' PUBLICATION bg_pub");

ok( wait_for_result(
		$subscriber, q{SELECT count(*), count(seen) FROM bg_rows}, '100|100'),
	'table synchronisation copies every row through a shed publisher');
$publisher->safe_psql('postgres',
	q{SET traffic_control.enabled = off; INSERT INTO bg_rows SELECT generate_series(101, 150)});
ok( wait_for_result(
		$subscriber, q{SELECT count(*), count(seen) FROM bg_rows}, '150|150'),
	'the apply worker applies rows whose trigger runs a shed query');
unlike(slurp_file($publisher->logfile), $refusal, 'publisher: nothing was refused');
unlike(slurp_file($subscriber->logfile), $refusal, 'subscriber: nothing was refused');

$subscriber->stop;
$publisher->stop;

done_testing();
