/**
 * A throwaway PostgreSQL cluster for run.sh: test/pg.ts's (initdb in a temp dir, as the `postgres`
 * user when root; loopback only; fsync off, so the numbers are the protocol's and the locks', not a
 * disk's). Creates one database per argument, prints `NAME URL` for each, then holds the cluster
 * until SIGTERM; the cluster is stopped and removed when this process ends, however it ends.
 *
 *   bun bench/pg-cluster.ts kb1 kb2
 */
import { startCluster } from "../test/pg.ts";
import "./lib.ts"; // SIGINT/SIGTERM → process.exit → test/pg.ts destroys the cluster

const cluster = await startCluster();
for (const name of process.argv.slice(2)) console.log(`${name} ${cluster.createDatabase(name)}`);
console.log("ready");
setInterval(() => {}, 1 << 30);
