// Random stall insertion on an AXI-stream link, for the cosimulation: in a cycle where the LFSR says
// "stall" (about `stall` of every 256 cycles) no new beat may start, which the producer sees as
// backpressure and the consumer as an idle cycle. A beat already offered downstream stays offered until it
// is taken, so the throttle itself keeps the AXI-stream rules. stall = 0 makes it a wire.
`timescale 1ns/1ps
module axis_throttle #(
    parameter DATA_WIDTH = 32,
    parameter SEED       = 16'hACE1
) (
    input  wire                    aclk,
    input  wire                    aresetn,
    input  wire [7:0]              stall,
    input  wire [DATA_WIDTH-1:0]   s_axis_tdata,
    input  wire [DATA_WIDTH/8-1:0] s_axis_tkeep,
    input  wire                    s_axis_tvalid,
    output wire                    s_axis_tready,
    input  wire                    s_axis_tlast,
    output wire [DATA_WIDTH-1:0]   m_axis_tdata,
    output wire [DATA_WIDTH/8-1:0] m_axis_tkeep,
    output wire                    m_axis_tvalid,
    input  wire                    m_axis_tready,
    output wire                    m_axis_tlast
);
    reg [15:0] lfsr;
    reg offered;  // a beat was offered last cycle and not taken: keep offering it
    // 16-bit Fibonacci LFSR (taps 16,14,13,11); its low byte against the stall rate.
    wire go = (stall == 0) || offered || (lfsr[7:0] >= stall);

    assign m_axis_tdata = s_axis_tdata;
    assign m_axis_tkeep = s_axis_tkeep;
    assign m_axis_tlast = s_axis_tlast;
    assign m_axis_tvalid = s_axis_tvalid && go;
    assign s_axis_tready = m_axis_tready && go;

    always @(posedge aclk) begin
        if (!aresetn) begin
            lfsr <= SEED;
            offered <= 1'b0;
        end else begin
            lfsr <= {lfsr[14:0], lfsr[15] ^ lfsr[13] ^ lfsr[12] ^ lfsr[10]};
            offered <= m_axis_tvalid && !m_axis_tready;
        end
    end
endmodule
