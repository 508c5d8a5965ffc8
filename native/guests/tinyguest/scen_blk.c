/*
 * Block scenarios.  blk writes a known pattern, reads it back and checks
 * it; reboot uses sector 0 to remember, across a SHUTDOWN(restart), that
 * it has already booted once.
 */
#include "tinyguest.h"

#define CHUNK_SECTORS 128                 /* 64 KiB per request */

static uint32_t iobuf[CHUNK_SECTORS * SECTOR_SIZE / 4] __attribute__((aligned(PAGE_SIZE)));

/* Word i of sector s; documented in README.md so a host test can check
 * the backing file. */
static uint32_t pattern(uint32_t s, uint32_t i, uint32_t seed)
{
	return (s * 2654435761u) ^ (i * 16777619u) ^ seed;
}

static int need_blk(const char *scen)
{
	if (blk_init() == 0)
		return 0;
	kprintf("tinyguest: %s FAIL no virtio block device\n", scen);
	return -1;
}

void scen_blk(void)
{
	if (need_blk("blk"))
		return;
	uint64_t cap = blk_capacity();
	uint32_t mb = arg_uint("blkmb", 0);
	uint32_t nsec = mb ? mb * 2048 : arg_uint("sectors", 64);
	uint32_t start = arg_uint("blkstart", 0);
	uint32_t seed = arg_uint("blkseed", 0x7A6B5C4D);
	uint32_t peek = arg_uint("blkpeek", 1);
	if (peek > CHUNK_SECTORS)
		peek = CHUNK_SECTORS;
	if (!nsec || (uint64_t)start + nsec > cap || (uint64_t)start + peek > cap) {
		kprintf("tinyguest: blk FAIL %u sectors at %u do not fit capacity %u\n",
			nsec, start, (uint32_t)cap);
		return;
	}

	/* First, what the host put there. */
	if (blk_io(VIRTIO_BLK_T_IN, start, iobuf, peek) != VIRTIO_BLK_S_OK) {
		kputs("tinyguest: blk FAIL read error (peek)\n");
		return;
	}
	const uint8_t *b = (const uint8_t *)iobuf;
	uint32_t before = crc32_update(0, iobuf, peek * SECTOR_SIZE);
	kprintf("tinyguest: blk before sectors=%u crc=%08x head=%02x%02x%02x%02x%02x%02x%02x%02x\n",
		peek, before, b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]);

	uint32_t crc = 0;
	for (uint32_t s = start; s < start + nsec; s += CHUNK_SECTORS) {
		uint32_t n = start + nsec - s < CHUNK_SECTORS ? start + nsec - s : CHUNK_SECTORS;
		for (uint32_t k = 0; k < n; k++)
			for (uint32_t i = 0; i < SECTOR_SIZE / 4; i++)
				iobuf[k * 128 + i] = pattern(s + k, i, seed);
		crc = crc32_update(crc, iobuf, n * SECTOR_SIZE);
		if (blk_io(VIRTIO_BLK_T_OUT, s, iobuf, n) != VIRTIO_BLK_S_OK) {
			kprintf("tinyguest: blk FAIL write error at sector %u\n", s);
			return;
		}
	}
	const char *flush = "unsupported";
	if (blk_has_flush()) {
		if (blk_io(VIRTIO_BLK_T_FLUSH, 0, 0, 0) != VIRTIO_BLK_S_OK) {
			kputs("tinyguest: blk FAIL flush error\n");
			return;
		}
		flush = "ok";
	}

	uint32_t bad = 0, first_bad = 0;
	for (uint32_t s = start; s < start + nsec; s += CHUNK_SECTORS) {
		uint32_t n = start + nsec - s < CHUNK_SECTORS ? start + nsec - s : CHUNK_SECTORS;
		memset(iobuf, 0, n * SECTOR_SIZE);
		if (blk_io(VIRTIO_BLK_T_IN, s, iobuf, n) != VIRTIO_BLK_S_OK) {
			kprintf("tinyguest: blk FAIL read error at sector %u\n", s);
			return;
		}
		for (uint32_t k = 0; k < n; k++)
			for (uint32_t i = 0; i < SECTOR_SIZE / 4; i++)
				if (iobuf[k * 128 + i] != pattern(s + k, i, seed)) {
					if (!bad++)
						first_bad = s + k;
					break;
				}
	}
	if (bad) {
		kprintf("tinyguest: blk FAIL %u bad sectors, first %u\n", bad, first_bad);
		return;
	}
	kprintf("tinyguest: blk PASS sectors=%u start=%u crc=%08x before=%08x flush=%s capacity=%u\n",
		nsec, start, crc, before, flush, (uint32_t)cap);
}

static const char reboot_mark[] = "TINYGUEST-REBOOT-MARK";

void scen_reboot(void)
{
	if (need_blk("reboot"))
		return;
	uint8_t *sec = (uint8_t *)iobuf;
	if (blk_io(VIRTIO_BLK_T_IN, 0, sec, 1) != VIRTIO_BLK_S_OK) {
		kputs("tinyguest: reboot FAIL read error\n");
		return;
	}
	if (!memcmp(sec, reboot_mark, sizeof(reboot_mark))) {
		memset(sec, 0, SECTOR_SIZE);
		if (blk_io(VIRTIO_BLK_T_OUT, 0, sec, 1) != VIRTIO_BLK_S_OK) {
			kputs("tinyguest: reboot FAIL could not clear the marker\n");
			return;
		}
		kputs("tinyguest: reboot PASS second boot\n");
		return;
	}
	memset(sec, 0, SECTOR_SIZE);
	memcpy(sec, reboot_mark, sizeof(reboot_mark));
	if (blk_io(VIRTIO_BLK_T_OUT, 0, sec, 1) != VIRTIO_BLK_S_OK) {
		kputs("tinyguest: reboot FAIL could not write the marker\n");
		return;
	}
	if (blk_has_flush())
		blk_io(VIRTIO_BLK_T_FLUSH, 0, 0, 0);
	kputs("tinyguest: reboot first boot, restarting\n");
	restart("tinyguest: reboot");
}
